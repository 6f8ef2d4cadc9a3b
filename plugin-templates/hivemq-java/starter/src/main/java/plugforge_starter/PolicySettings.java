package plugforge_starter;

import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.Properties;
import java.util.Set;
import java.util.stream.Collectors;

/** The extension's settings, from {@code conf/config.properties} in the extension folder. */
public final class PolicySettings {

    public static final String RELATIVE_PATH = "conf/config.properties";
    static final String DENY_USERS = "deny_users";
    static final String DEFAULT_DENY_USERS = "mallory";

    private final Set<String> denyUsers;

    PolicySettings(final Set<String> denyUsers) {
        this.denyUsers = Collections.unmodifiableSet(new LinkedHashSet<>(denyUsers));
    }

    public Set<String> denyUsers() {
        return denyUsers;
    }

    /** Reads the settings; a missing file means the defaults. */
    public static PolicySettings load(final Path file) throws IOException {
        final Properties properties = new Properties();
        try (Reader reader = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
            properties.load(reader);
        } catch (final NoSuchFileException e) {
            return new PolicySettings(parseUsers(DEFAULT_DENY_USERS));
        }
        for (final String key : properties.stringPropertyNames()) {
            if (!DENY_USERS.equals(key)) {
                throw new IllegalArgumentException("unknown setting '" + key + "' in " + file
                        + "; the only setting is '" + DENY_USERS + "' (comma separated usernames)");
            }
        }
        return new PolicySettings(parseUsers(properties.getProperty(DENY_USERS, DEFAULT_DENY_USERS)));
    }

    static Set<String> parseUsers(final String commaSeparated) {
        return Arrays.stream(commaSeparated.split(","))
                .map(String::trim)
                .filter(user -> !user.isEmpty())
                .collect(Collectors.toCollection(LinkedHashSet::new));
    }
}
