package plugforge_starter;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.concurrent.TimeUnit;

/**
 * The settings file, re-read when it changes: a new {@code deny_users} applies to the next
 * CONNECT without restarting HiveMQ (which loads extensions only at start).
 *
 * <p>No watcher thread: {@link #current()} looks at the file's modification time and size at
 * most once per {@link #CHECK_INTERVAL_MS}. A changed file that cannot be read or parsed is
 * logged and the last good settings stay in force.
 */
public final class SettingsFile {

    static final long CHECK_INTERVAL_MS = 1000;
    private static final Logger log = LoggerFactory.getLogger(SettingsFile.class);

    private final Path file;
    private volatile PolicySettings settings;
    private volatile Object stamp;
    private volatile long checkedAt;

    /** Reads the file once; a bad file here is an error the caller reports. */
    public SettingsFile(final Path file) throws IOException {
        this.file = file;
        this.stamp = stampOf(file);
        this.settings = PolicySettings.load(file);
        this.checkedAt = System.nanoTime();
    }

    public PolicySettings current() {
        final long now = System.nanoTime();
        if (now - checkedAt < TimeUnit.MILLISECONDS.toNanos(CHECK_INTERVAL_MS)) {
            return settings;
        }
        synchronized (this) {
            if (now - checkedAt >= TimeUnit.MILLISECONDS.toNanos(CHECK_INTERVAL_MS)) {
                reloadIfChanged();
                checkedAt = now;
            }
        }
        return settings;
    }

    private void reloadIfChanged() {
        final Object newStamp;
        try {
            newStamp = stampOf(file);
        } catch (final IOException e) {
            return; // attributes unreadable for a moment: the next check tries again
        }
        if (newStamp.equals(stamp)) {
            return;
        }
        // Remembered before parsing: a bad file is reported once, and fixing it changes the stamp.
        stamp = newStamp;
        try {
            settings = PolicySettings.load(file);
            log.info("plugforge-starter: reloaded {}; refusing users {}", file, settings.denyUsers());
        } catch (final IOException | IllegalArgumentException e) {
            log.error("plugforge-starter: {} is invalid, keeping the previous settings: {}",
                    file, e.getMessage());
        }
    }

    private static Object stampOf(final Path file) throws IOException {
        try {
            final BasicFileAttributes attributes = Files.readAttributes(file, BasicFileAttributes.class);
            return attributes.lastModifiedTime().toMillis() + "/" + attributes.size();
        } catch (final NoSuchFileException e) {
            return "missing";
        }
    }
}
