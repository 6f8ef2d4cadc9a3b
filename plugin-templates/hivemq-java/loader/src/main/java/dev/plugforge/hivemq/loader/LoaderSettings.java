package dev.plugforge.hivemq.loader;

import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Map;
import java.util.Properties;
import java.util.Set;

/** The loader's own settings: {@code conf/config.properties}, overridden by the environment. */
final class LoaderSettings {

    static final String RELATIVE_PATH = "conf/config.properties";
    static final String ENV_PLUGIN_DIR = "PLUGFORGE_LOADER_PLUGIN_DIR";
    private static final Set<String> KEYS = Set.of("plugin_dir", "poll_interval_ms");

    private final Path pluginDir;
    private final long pollIntervalMillis;

    private LoaderSettings(final Path pluginDir, final long pollIntervalMillis) {
        this.pluginDir = pluginDir;
        this.pollIntervalMillis = pollIntervalMillis;
    }

    Path pluginDir() {
        return pluginDir;
    }

    long pollIntervalMillis() {
        return pollIntervalMillis;
    }

    static LoaderSettings load(final Path file, final Map<String, String> env) throws IOException {
        final Properties properties = new Properties();
        try (Reader reader = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
            properties.load(reader);
        } catch (final NoSuchFileException e) {
            // Fine when the environment names the plugin directory.
        }
        for (final String key : properties.stringPropertyNames()) {
            if (!KEYS.contains(key)) {
                throw new IllegalArgumentException("unknown setting '" + key + "' in " + file
                        + "; expected one of " + KEYS);
            }
        }
        String dir = env.get(ENV_PLUGIN_DIR);
        if (dir == null || dir.isEmpty()) {
            dir = properties.getProperty("plugin_dir", "");
        }
        if (dir.isEmpty()) {
            throw new IllegalArgumentException("no plugin directory: set plugin_dir in " + file
                    + " or the environment variable " + ENV_PLUGIN_DIR);
        }
        final String poll = properties.getProperty("poll_interval_ms", "200").trim();
        final long pollMillis;
        try {
            pollMillis = Long.parseLong(poll);
        } catch (final NumberFormatException e) {
            throw new IllegalArgumentException("poll_interval_ms in " + file
                    + ": expected milliseconds, found '" + poll + "'");
        }
        if (pollMillis < 10 || pollMillis > 60_000) {
            throw new IllegalArgumentException("poll_interval_ms in " + file
                    + ": expected 10..60000, found " + pollMillis);
        }
        return new LoaderSettings(Path.of(dir), pollMillis);
    }
}
