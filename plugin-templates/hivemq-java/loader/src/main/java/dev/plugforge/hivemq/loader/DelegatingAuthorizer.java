package dev.plugforge.hivemq.loader;

import com.hivemq.extension.sdk.api.auth.Authorizer;
import com.hivemq.extension.sdk.api.auth.PublishAuthorizer;
import com.hivemq.extension.sdk.api.auth.SubscriptionAuthorizer;
import com.hivemq.extension.sdk.api.auth.parameter.AuthorizerProviderInput;
import com.hivemq.extension.sdk.api.auth.parameter.PublishAuthorizerInput;
import com.hivemq.extension.sdk.api.auth.parameter.PublishAuthorizerOutput;
import com.hivemq.extension.sdk.api.auth.parameter.SubscriptionAuthorizerInput;
import com.hivemq.extension.sdk.api.auth.parameter.SubscriptionAuthorizerOutput;
import com.hivemq.extension.sdk.api.packets.publish.AckReasonCode;
import com.hivemq.extension.sdk.api.packets.subscribe.SubackReasonCode;

/**
 * One client's authorizer: asks the plugin active at the time of each PUBLISH/SUBSCRIBE, so a
 * client connected before an upgrade is authorized by the new version from then on. With no
 * active plugin nothing is authorized (fail closed, like CONNECT): clients admitted earlier stay
 * connected, but HiveMQ closes a connection whose PUBLISH is refused.
 */
final class DelegatingAuthorizer implements PublishAuthorizer, SubscriptionAuthorizer {

    private final PluginSwitch plugins;
    private final AuthorizerProviderInput providerInput;
    private LoadedPlugin cachedFor;
    private Authorizer cached;

    DelegatingAuthorizer(final PluginSwitch plugins, final AuthorizerProviderInput providerInput) {
        this.plugins = plugins;
        this.providerInput = providerInput;
    }

    /** The plugin's authorizer for this client, asked again after every switch. */
    private synchronized Authorizer authorizer(final LoadedPlugin plugin) {
        if (plugin != cachedFor) {
            cached = plugin.authorizerFor(providerInput);
            cachedFor = plugin;
        }
        return cached;
    }

    @Override
    public void authorizePublish(final PublishAuthorizerInput input, final PublishAuthorizerOutput output) {
        final LoadedPlugin plugin = plugins.active();
        final Authorizer authorizer = plugin == null ? null : authorizer(plugin);
        if (plugin == null) {
            output.failAuthorization(AckReasonCode.NOT_AUTHORIZED, DelegatingAuthenticator.NO_PLUGIN);
        } else if (authorizer instanceof PublishAuthorizer) {
            plugin.run(() -> ((PublishAuthorizer) authorizer).authorizePublish(input, output));
        } else {
            output.nextExtensionOrDefault();
        }
    }

    @Override
    public void authorizeSubscribe(final SubscriptionAuthorizerInput input,
                                   final SubscriptionAuthorizerOutput output) {
        final LoadedPlugin plugin = plugins.active();
        final Authorizer authorizer = plugin == null ? null : authorizer(plugin);
        if (plugin == null) {
            output.failAuthorization(SubackReasonCode.NOT_AUTHORIZED, DelegatingAuthenticator.NO_PLUGIN);
        } else if (authorizer instanceof SubscriptionAuthorizer) {
            plugin.run(() -> ((SubscriptionAuthorizer) authorizer).authorizeSubscribe(input, output));
        } else {
            output.nextExtensionOrDefault();
        }
    }
}
