package plugforge_starter;

import com.hivemq.extension.sdk.api.auth.SimpleAuthenticator;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthInput;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthOutput;
import com.hivemq.extension.sdk.api.packets.connect.ConnackReasonCode;

import java.util.Set;

/** Refuses CONNECT for the usernames in {@code deny_users}; lets every other client in. */
public final class DenyListAuthenticator implements SimpleAuthenticator {

    private final Set<String> denyUsers;

    public DenyListAuthenticator(final Set<String> denyUsers) {
        this.denyUsers = Set.copyOf(denyUsers);
    }

    @Override
    public void onConnect(final SimpleAuthInput input, final SimpleAuthOutput output) {
        final String user = input.getConnectPacket().getUserName().orElse("");
        if (denyUsers.contains(user)) {
            output.failAuthentication(ConnackReasonCode.NOT_AUTHORIZED, "user is not allowed to connect");
        } else {
            output.authenticateSuccessfully();
        }
    }
}
