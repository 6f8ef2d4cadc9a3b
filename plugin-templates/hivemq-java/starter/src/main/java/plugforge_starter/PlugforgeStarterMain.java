package plugforge_starter;

import com.hivemq.extension.sdk.api.ExtensionMain;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartOutput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopOutput;
import com.hivemq.extension.sdk.api.services.Services;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.nio.file.Path;

/**
 * Entry point HiveMQ calls when it loads the extension folder (found through
 * {@code META-INF/services/com.hivemq.extension.sdk.api.ExtensionMain}).
 */
public final class PlugforgeStarterMain implements ExtensionMain {

    private static final Logger log = LoggerFactory.getLogger(PlugforgeStarterMain.class);

    @Override
    public void extensionStart(final ExtensionStartInput input, final ExtensionStartOutput output) {
        final Path home = input.getExtensionInformation().getExtensionHomeFolder().toPath();
        final SettingsFile settings;
        try {
            settings = new SettingsFile(home.resolve(PolicySettings.RELATIVE_PATH));
        } catch (final IOException | IllegalArgumentException e) {
            // preventExtensionStartup leaves the broker running without this extension and
            // logs the reason, instead of half-applying a broken policy.
            output.preventExtensionStartup("plugforge-starter: " + e.getMessage());
            return;
        }
        final DenyListAuthenticator authenticator =
                new DenyListAuthenticator(() -> settings.current().denyUsers());
        final TopicAuthorizer authorizer = new TopicAuthorizer();
        Services.securityRegistry().setAuthenticatorProvider(providerInput -> authenticator);
        Services.securityRegistry().setAuthorizerProvider(providerInput -> authorizer);
        log.info("plugforge-starter started; refusing users {}", settings.current().denyUsers());
    }

    @Override
    public void extensionStop(final ExtensionStopInput input, final ExtensionStopOutput output) {
        log.info("plugforge-starter stopped");
    }
}
