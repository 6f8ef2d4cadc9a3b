package dev.plugforge.hivemq.loader;

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
 * Installed once, before HiveMQ starts. Registers one authenticator provider and one authorizer
 * provider, which delegate every call to the plugin the sidecar activated through the control
 * file; switching plugins (enable, disable, upgrade) never restarts HiveMQ.
 */
public final class LoaderMain implements ExtensionMain {

    private static final Logger log = LoggerFactory.getLogger(LoaderMain.class);

    private volatile PluginSwitch pluginSwitch;

    @Override
    public void extensionStart(final ExtensionStartInput input, final ExtensionStartOutput output) {
        final Path home = input.getExtensionInformation().getExtensionHomeFolder().toPath();
        final LoaderSettings settings;
        final HostContext host;
        try {
            settings = LoaderSettings.load(home.resolve(LoaderSettings.RELATIVE_PATH), System.getenv());
            host = HostContext.capture(input.getServerInformation(), input.getEnabledExtensions());
        } catch (final IOException | IllegalArgumentException | ReflectiveOperationException e) {
            output.preventExtensionStartup("plugforge-loader: " + e.getMessage());
            return;
        }
        final PluginSwitch sw = new PluginSwitch(settings.pluginDir(), host);
        Services.securityRegistry().setAuthenticatorProvider(
                providerInput -> new DelegatingAuthenticator(sw, providerInput));
        Services.securityRegistry().setAuthorizerProvider(
                providerInput -> new DelegatingAuthorizer(sw, providerInput));
        log.info("plugforge-loader starting; plugin directory {}, control file {}",
                settings.pluginDir(), sw.controlFile());
        // The control file is applied before extensionStart returns, i.e. before the listeners
        // open: after a broker restart the active plugin is back before the first CONNECT.
        sw.start(settings.pollIntervalMillis());
        pluginSwitch = sw;
    }

    @Override
    public void extensionStop(final ExtensionStopInput input, final ExtensionStopOutput output) {
        final PluginSwitch sw = pluginSwitch;
        if (sw != null) {
            sw.stop();
        }
        log.info("plugforge-loader stopped");
    }
}
