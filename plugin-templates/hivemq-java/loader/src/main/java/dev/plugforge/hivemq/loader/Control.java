package dev.plugforge.hivemq.loader;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The sidecar's request: {@code plugin=<name>}, {@code version=<sha256 hex>},
 * {@code request=<id>} lines. No plugin (empty file, empty {@code plugin=}) means deactivate.
 */
final class Control {

    private static final Pattern REQUEST = Pattern.compile("(?m)^\\s*request\\s*=(.*)$");
    private static final Pattern NAME = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._-]{0,127}");

    final String plugin;
    final String version;
    final String request;

    private Control(final String plugin, final String version, final String request) {
        this.plugin = plugin;
        this.version = version;
        this.request = request;
    }

    boolean empty() {
        return plugin.isEmpty();
    }

    /** The request id of a control file that could not be parsed, so the sidecar sees the answer. */
    static String requestOf(final String text) {
        final Matcher m = REQUEST.matcher(text);
        return m.find() ? m.group(1).trim() : "";
    }

    static Map<String, String> fields(final String text) {
        final Map<String, String> fields = new LinkedHashMap<>();
        for (final String line : text.split("\n")) {
            final String trimmed = line.trim();
            if (trimmed.isEmpty() || trimmed.startsWith("#")) {
                continue;
            }
            final int eq = trimmed.indexOf('=');
            if (eq < 0) {
                throw new IllegalArgumentException("control file line '" + trimmed
                        + "': expected key=value");
            }
            fields.put(trimmed.substring(0, eq).trim(), trimmed.substring(eq + 1).trim());
        }
        return fields;
    }

    static Control parse(final String text) {
        final Map<String, String> fields = fields(text);
        for (final String key : fields.keySet()) {
            if (!key.equals("plugin") && !key.equals("version") && !key.equals("request")) {
                throw new IllegalArgumentException("control file: unknown key '" + key
                        + "'; expected plugin, version, request");
            }
        }
        final String plugin = fields.getOrDefault("plugin", "");
        final String version = fields.getOrDefault("version", "");
        if (!plugin.isEmpty() && !(NAME.matcher(plugin).matches() && NAME.matcher(version).matches())) {
            throw new IllegalArgumentException("control file: expected plugin and version made of "
                    + "[A-Za-z0-9._-] (a directory <plugin_dir>/<plugin>/<version>/), found plugin='"
                    + plugin + "' version='" + version + "'");
        }
        return new Control(plugin, version, fields.getOrDefault("request", ""));
    }
}
