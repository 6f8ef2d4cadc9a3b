package dev.plugforge.hivemq.loader;

import com.hivemq.extension.sdk.api.ExtensionMain;
import com.hivemq.extension.sdk.api.auth.Authenticator;
import com.hivemq.extension.sdk.api.auth.Authorizer;
import com.hivemq.extension.sdk.api.auth.parameter.AuthenticatorProviderInput;
import com.hivemq.extension.sdk.api.auth.parameter.AuthorizerProviderInput;
import com.hivemq.extension.sdk.api.client.parameter.ServerInformation;
import com.hivemq.extension.sdk.api.parameter.ExtensionInformation;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartOutput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopOutput;
import com.hivemq.extension.sdk.api.services.auth.provider.AuthenticatorProvider;
import com.hivemq.extension.sdk.api.services.auth.provider.AuthorizerProvider;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.MalformedURLException;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Enumeration;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.function.Supplier;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * One started plugin version: an unmodified HiveMQ extension folder, its own class loader, and
 * the providers its {@code extensionStart} registered.
 */
final class LoadedPlugin {

    private static final Logger log = LoggerFactory.getLogger(LoadedPlugin.class);
    private static final String MAIN_SERVICE = "META-INF/services/" + ExtensionMain.class.getName();

    final String name;
    final String version;
    private final PluginClassLoader classLoader;
    private final ExtensionMain main;
    private final ScopedServices services;
    private final ExtensionInformation information;
    private final HostContext host;

    private LoadedPlugin(final String name, final String version, final PluginClassLoader classLoader,
                         final ExtensionMain main, final ScopedServices services,
                         final ExtensionInformation information, final HostContext host) {
        this.name = name;
        this.version = version;
        this.classLoader = classLoader;
        this.main = main;
        this.services = services;
        this.information = information;
        this.host = host;
    }

    String label() {
        return name + " " + version;
    }

    static LoadedPlugin start(final Path pluginDir, final String name, final String version,
                              final Optional<String> previousVersion, final HostContext host)
            throws LoadFailure {
        final Path dir = pluginDir.resolve(name).resolve(version);
        final String what = "plugin " + name + " version " + version;
        if (!Files.isDirectory(dir)) {
            throw new LoadFailure(what + ": " + dir + " does not exist; install the version "
                    + "there before activating it");
        }
        final URL[] jars = jars(dir, what);
        final PluginClassLoader loader = new PluginClassLoader(jars, LoaderMain.class.getClassLoader());
        try {
            final ScopedServices services = new ScopedServices();
            loader.injectStatics(services.servicesMap(host.services), host.builders);
            final String mainClass = mainClass(loader, what);
            final ExtensionMain main = (ExtensionMain) loader.loadClass(mainClass)
                    .getDeclaredConstructor().newInstance();
            final ExtensionInformation information = Descriptor.read(dir, name);
            final String[] prevented = new String[1];
            final ExtensionStartOutput output = reason -> prevented[0] = reason;
            final ExtensionStartInput input = new StartInput(information, host, previousVersion);
            withContextLoader(loader, () -> {
                main.extensionStart(input, output);
                return null;
            });
            if (prevented[0] != null) {
                throw new LoadFailure(what + " prevented its own start: " + prevented[0]);
            }
            if (services.authenticatorProvider() == null && services.authorizerProvider() == null) {
                throw new LoadFailure(what + ": " + mainClass + ".extensionStart registered neither "
                        + "an authenticator nor an authorizer provider (Services.securityRegistry())");
            }
            return new LoadedPlugin(name, version, loader, main, services, information, host);
        } catch (final LoadFailure e) {
            closeQuietly(loader);
            throw e;
        } catch (final Exception | LinkageError e) {
            closeQuietly(loader);
            final Throwable cause = e.getCause() != null ? e.getCause() : e;
            throw new LoadFailure(what + " could not be started from " + dir + ": " + cause, e);
        }
    }

    Authenticator authenticatorFor(final AuthenticatorProviderInput input) {
        final AuthenticatorProvider provider = services.authenticatorProvider();
        return provider == null ? null : withContextLoader(classLoader, () -> provider.getAuthenticator(input));
    }

    Authorizer authorizerFor(final AuthorizerProviderInput input) {
        final AuthorizerProvider provider = services.authorizerProvider();
        return provider == null ? null : withContextLoader(classLoader, () -> provider.getAuthorizer(input));
    }

    void run(final Runnable call) {
        withContextLoader(classLoader, () -> {
            call.run();
            return null;
        });
    }

    /** Calls the plugin's {@code extensionStop}; its classes stay usable until {@link #close}. */
    void stop() {
        final ExtensionStopInput input = new ExtensionStopInput() {
            @Override
            public ExtensionInformation getExtensionInformation() {
                return information;
            }

            @Override
            public ServerInformation getServerInformation() {
                return host.serverInformation;
            }

            @Override
            public Map<String, ExtensionInformation> getEnabledExtensions() {
                return host.enabledExtensions;
            }
        };
        try {
            withContextLoader(classLoader, () -> {
                main.extensionStop(input, new ExtensionStopOutput() { });
                return null;
            });
        } catch (final RuntimeException | LinkageError e) {
            log.warn("plugforge-loader: {} failed in extensionStop: {}", label(), e.toString());
        }
    }

    void close() {
        closeQuietly(classLoader);
    }

    private static <T> T withContextLoader(final ClassLoader loader, final Supplier<T> call) {
        final Thread thread = Thread.currentThread();
        final ClassLoader previous = thread.getContextClassLoader();
        thread.setContextClassLoader(loader);
        try {
            return call.get();
        } finally {
            thread.setContextClassLoader(previous);
        }
    }

    private static URL[] jars(final Path dir, final String what) throws LoadFailure {
        final List<Path> jars;
        try (Stream<Path> files = Files.list(dir)) {
            jars = files.filter(p -> p.getFileName().toString().endsWith(".jar") && Files.isRegularFile(p))
                    .sorted().collect(Collectors.toList());
        } catch (final IOException e) {
            throw new LoadFailure(what + ": cannot list " + dir + ": " + e, e);
        }
        if (jars.isEmpty()) {
            throw new LoadFailure(what + ": no .jar in " + dir + "; expected a HiveMQ extension folder");
        }
        final List<URL> urls = new ArrayList<>();
        for (final Path jar : jars) {
            try {
                urls.add(jar.toUri().toURL());
            } catch (final MalformedURLException e) {
                throw new LoadFailure(what + ": bad jar path " + jar, e);
            }
        }
        return urls.toArray(new URL[0]);
    }

    private static String mainClass(final PluginClassLoader loader, final String what)
            throws IOException, LoadFailure {
        final List<String> names = new ArrayList<>();
        // findResources: the plugin's own jars only, never the loader's service file.
        final Enumeration<URL> files = loader.findResources(MAIN_SERVICE);
        for (final URL file : Collections.list(files)) {
            try (BufferedReader reader = new BufferedReader(
                    new InputStreamReader(file.openStream(), StandardCharsets.UTF_8))) {
                reader.lines().map(line -> line.replaceAll("#.*", "").trim())
                        .filter(line -> !line.isEmpty()).forEach(names::add);
            }
        }
        if (names.size() != 1) {
            throw new LoadFailure(what + ": expected exactly one class in " + MAIN_SERVICE
                    + " of its jar(s), found " + names + "; is the jar a HiveMQ extension?");
        }
        return names.get(0);
    }

    private static void closeQuietly(final PluginClassLoader loader) {
        try {
            loader.close();
        } catch (final IOException e) {
            log.warn("plugforge-loader: closing a plugin class loader failed: {}", e.toString());
        }
    }

    /** The plugin's {@code hivemq-extension.xml}, as far as the start input needs it. */
    static final class Descriptor implements ExtensionInformation {
        private final String id;
        private final String name;
        private final String version;
        private final String author;
        private final File home;

        private Descriptor(final String id, final String name, final String version,
                           final String author, final File home) {
            this.id = id;
            this.name = name;
            this.version = version;
            this.author = author;
            this.home = home;
        }

        static Descriptor read(final Path dir, final String pluginName) throws IOException {
            final Path xml = dir.resolve("hivemq-extension.xml");
            final String text = Files.exists(xml) ? Files.readString(xml, StandardCharsets.UTF_8) : "";
            return new Descriptor(tag(text, "id", pluginName), tag(text, "name", pluginName),
                    tag(text, "version", dir.getFileName().toString()), tag(text, "author", null),
                    dir.toFile());
        }

        private static String tag(final String xml, final String tag, final String fallback) {
            final Matcher m = Pattern.compile("<" + tag + ">\\s*([^<]*?)\\s*</" + tag + ">").matcher(xml);
            return m.find() ? m.group(1) : fallback;
        }

        @Override
        public String getId() {
            return id;
        }

        @Override
        public String getVersion() {
            return version;
        }

        @Override
        public String getName() {
            return name;
        }

        @Override
        public Optional<String> getAuthor() {
            return Optional.ofNullable(author);
        }

        @Override
        public File getExtensionHomeFolder() {
            return home;
        }
    }

    private static final class StartInput implements ExtensionStartInput {
        private final ExtensionInformation information;
        private final HostContext host;
        private final Optional<String> previousVersion;

        StartInput(final ExtensionInformation information, final HostContext host,
                   final Optional<String> previousVersion) {
            this.information = information;
            this.host = host;
            this.previousVersion = previousVersion;
        }

        @Override
        public ExtensionInformation getExtensionInformation() {
            return information;
        }

        @Override
        public ServerInformation getServerInformation() {
            return host.serverInformation;
        }

        @Override
        public Map<String, ExtensionInformation> getEnabledExtensions() {
            return host.enabledExtensions;
        }

        @Override
        public Optional<String> getPreviousVersion() {
            return previousVersion;
        }
    }

    /** Why a plugin version could not be started; the previous one stays active. */
    static final class LoadFailure extends Exception {
        private static final long serialVersionUID = 1L;

        LoadFailure(final String message) {
            super(message);
        }

        LoadFailure(final String message, final Throwable cause) {
            super(message, cause);
        }
    }
}
