package dev.plugforge.hivemq.loader;

import dev.plugforge.hivemq.loader.LoadedPlugin.LoadFailure;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * Holds the active plugin and follows the control file. A new version is started completely
 * before it replaces the active one (one volatile write), so every CONNECT or PUBLISH is decided
 * by exactly one version, and a version that fails to start leaves the previous one active.
 */
final class PluginSwitch {

    static final String STATE_DIR = ".plugforge-loader";
    private static final Logger log = LoggerFactory.getLogger(PluginSwitch.class);
    /**
     * The status file is rewritten at least this often: the sidecar tells a live loader from a
     * stopped broker by its age (pids are not comparable across the containers of a pod).
     */
    static final long HEARTBEAT_MILLIS = 2000;
    /** In-flight calls into a replaced version finish before its jars are closed. */
    private static final long CLOSE_DELAY_SECONDS = 10;

    private final Path pluginDir;
    private final Path controlFile;
    private final Path statusFile;
    private final HostContext host;
    private final long startedAt = System.currentTimeMillis();
    private final ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor(r -> {
        final Thread thread = new Thread(r, "plugforge-loader");
        thread.setDaemon(true);
        return thread;
    });

    private volatile LoadedPlugin active;
    private String lastControl;
    private long lastStatusWrite;
    private String lastRequest = "";
    private String lastError = "";
    private long loads;

    PluginSwitch(final Path pluginDir, final HostContext host) {
        this.pluginDir = pluginDir;
        this.controlFile = pluginDir.resolve(STATE_DIR).resolve("control.properties");
        this.statusFile = pluginDir.resolve(STATE_DIR).resolve("status.properties");
        this.host = host;
    }

    LoadedPlugin active() {
        return active;
    }

    Path controlFile() {
        return controlFile;
    }

    void start(final long pollMillis) {
        check();
        timer.scheduleWithFixedDelay(this::check, pollMillis, pollMillis, TimeUnit.MILLISECONDS);
    }

    void stop() {
        timer.shutdownNow();
        final LoadedPlugin old = active;
        active = null;
        if (old != null) {
            old.stop();
            old.close();
        }
    }

    /** Re-reads the control file and acts when its content changed since the last look. */
    synchronized void check() {
        try {
            final String text = readControl();
            if (text.equals(lastControl)) {
                if (System.nanoTime() - lastStatusWrite > TimeUnit.MILLISECONDS.toNanos(HEARTBEAT_MILLIS)) {
                    writeStatus();
                }
                return;
            }
            lastControl = text;
            Control control = null;
            try {
                control = Control.parse(text);
                lastRequest = control.request;
                apply(control);
                lastError = "";
            } catch (final IllegalArgumentException | LoadFailure e) {
                if (control == null) {
                    lastRequest = Control.requestOf(text);
                }
                lastError = e.getMessage();
                log.error("plugforge-loader: {}; {} stays active", e.getMessage(), describe(active));
            }
            writeStatus();
        } catch (final Throwable e) {
            // An exception escaping here would cancel the scheduled task: log, try next tick.
            log.error("plugforge-loader: checking {} failed: {}", controlFile, e.toString());
        }
    }

    private void apply(final Control control) throws LoadFailure {
        final LoadedPlugin current = active;
        if (control.empty()) {
            if (current != null) {
                active = null;
                retire(current);
                log.info("plugforge-loader: deactivated {}; refusing every CONNECT until a plugin "
                        + "is activated", current.label());
            }
            return;
        }
        if (current != null && current.name.equals(control.plugin) && current.version.equals(control.version)) {
            return;
        }
        final Optional<String> previous = current != null && current.name.equals(control.plugin)
                ? Optional.of(current.version) : Optional.empty();
        final LoadedPlugin next = LoadedPlugin.start(pluginDir, control.plugin, control.version, previous, host);
        loads++;
        active = next;
        if (current != null) {
            retire(current);
        }
        log.info("plugforge-loader: activated {} (replacing {})", next.label(), describe(current));
    }

    private void retire(final LoadedPlugin old) {
        old.stop();
        timer.schedule(old::close, CLOSE_DELAY_SECONDS, TimeUnit.SECONDS);
    }

    private String readControl() throws IOException {
        try {
            return Files.readString(controlFile, StandardCharsets.UTF_8);
        } catch (final NoSuchFileException e) {
            return "";
        }
    }

    private void writeStatus() throws IOException {
        final LoadedPlugin current = active;
        final Map<String, String> fields = new LinkedHashMap<>();
        fields.put("pid", Long.toString(ProcessHandle.current().pid()));
        fields.put("loader_started_ms", Long.toString(startedAt));
        fields.put("active_plugin", current == null ? "" : current.name);
        fields.put("active_version", current == null ? "" : current.version);
        fields.put("request", lastRequest);
        fields.put("result", lastError.isEmpty() ? "ok" : "failed");
        fields.put("error", lastError);
        fields.put("loads", Long.toString(loads));
        fields.put("written_ms", Long.toString(System.currentTimeMillis()));
        StatusFile.write(statusFile, fields);
        lastStatusWrite = System.nanoTime();
    }

    private static String describe(final LoadedPlugin plugin) {
        return plugin == null ? "no plugin" : plugin.label();
    }
}
