package plugforge_starter;

import com.hivemq.extension.sdk.api.auth.SimpleAuthenticator;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthInput;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthOutput;
import com.hivemq.extension.sdk.api.packets.connect.ConnackReasonCode;

import java.util.Set;
import java.util.function.Supplier;

/** Refuses CONNECT for the usernames in {@code deny_users}; lets every other client in. */
public final class DenyListAuthenticator implements SimpleAuthenticator {

    private final Supplier<Set<String>> denyUsers;

    /** {@code denyUsers} is asked on every CONNECT, so changed settings apply at once. */
    public DenyListAuthenticator(final Supplier<Set<String>> denyUsers) {
        this.denyUsers = denyUsers;
    }

    @Override
    public void onConnect(final SimpleAuthInput input, final SimpleAuthOutput output) {
        final String user = input.getConnectPacket().getUserName().orElse("");
        if (denyUsers.get().contains(user)) {
            output.failAuthentication(ConnackReasonCode.NOT_AUTHORIZED, "user is not allowed to connect");
        } else {
            output.authenticateSuccessfully();
        }
    }
}
