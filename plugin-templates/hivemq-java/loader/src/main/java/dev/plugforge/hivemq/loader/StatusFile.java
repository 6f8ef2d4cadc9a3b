package dev.plugforge.hivemq.loader;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Map;

/** {@code key=value} lines the sidecar reads; written to a temporary file and renamed. */
final class StatusFile {

    private StatusFile() {
    }

    static void write(final Path file, final Map<String, String> fields) throws IOException {
        final StringBuilder text = new StringBuilder("# written by plugforge-loader\n");
        for (final Map.Entry<String, String> field : fields.entrySet()) {
            text.append(field.getKey()).append('=')
                    .append(field.getValue().replace('\n', ' ').replace('\r', ' ')).append('\n');
        }
        if (!Files.isDirectory(file.getParent())) {
            Files.createDirectories(file.getParent());
            // Group-writable: the sidecar (another uid, same fsGroup in a pod) writes control here.
            Files.setPosixFilePermissions(file.getParent(), PosixFilePermissions.fromString("rwxrwxr-x"));
        }
        final Path tmp = Files.createTempFile(file.getParent(), ".status", ".tmp");
        try {
            Files.writeString(tmp, text, StandardCharsets.UTF_8);
            // createTempFile makes it owner-only; the sidecar may run as another user.
            Files.setPosixFilePermissions(tmp, PosixFilePermissions.fromString("rw-r--r--"));
            Files.move(tmp, file, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}
