package dev.plugforge.hivemq.loader;

import com.hivemq.extension.sdk.api.auth.Authenticator;
import com.hivemq.extension.sdk.api.auth.SimpleAuthenticator;
import com.hivemq.extension.sdk.api.auth.parameter.AuthenticatorProviderInput;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthInput;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthOutput;
import com.hivemq.extension.sdk.api.packets.connect.ConnackReasonCode;

/**
 * Decides a CONNECT with the active plugin's authenticator. No active plugin: refused (fail
 * closed; the sidecar's readiness is false then, so the pod is out of the Service anyway).
 */
final class DelegatingAuthenticator implements SimpleAuthenticator {

    static final String NO_PLUGIN = "no auth plugin is active";

    private final PluginSwitch plugins;
    private final AuthenticatorProviderInput providerInput;

    DelegatingAuthenticator(final PluginSwitch plugins, final AuthenticatorProviderInput providerInput) {
        this.plugins = plugins;
        this.providerInput = providerInput;
    }

    @Override
    public void onConnect(final SimpleAuthInput input, final SimpleAuthOutput output) {
        final LoadedPlugin plugin = plugins.active();
        if (plugin == null) {
            output.failAuthentication(ConnackReasonCode.NOT_AUTHORIZED, NO_PLUGIN);
            return;
        }
        final Authenticator authenticator = plugin.authenticatorFor(providerInput);
        if (authenticator == null) {
            output.nextExtensionOrDefault();
        } else if (authenticator instanceof SimpleAuthenticator) {
            plugin.run(() -> ((SimpleAuthenticator) authenticator).onConnect(input, output));
        } else {
            output.failAuthentication(ConnackReasonCode.NOT_AUTHORIZED,
                    "the active plugin's authenticator is not a SimpleAuthenticator");
        }
    }
}
