import com.hivemq.embedded.EmbeddedHiveMQ;

import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;

/**
 * Runs HiveMQ Community Edition (embedded artifact) for plugforge's testbed.
 *
 * <p>Usage: {@code Launcher <config-dir> <data-dir> <extensions-dir>}. Prints
 * {@code PLUGFORGE-HIVEMQ-STARTED} once the broker accepts connections and stops the broker
 * cleanly on SIGTERM. Unlike the CE distribution (which ships hivemq-allow-all-extension because
 * it refuses clients when no authenticator is installed), the embedded variant allows
 * unauthenticated clients by itself, so nothing else is needed for an open broker.
 */
public final class Launcher {

    private Launcher() {
    }

    public static void main(final String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: Launcher <config-dir> <data-dir> <extensions-dir>");
            System.exit(2);
        }
        final EmbeddedHiveMQ hivemq = EmbeddedHiveMQ.builder()
                .withConfigurationFolder(Path.of(args[0]))
                .withDataFolder(Path.of(args[1]))
                .withExtensionsFolder(Path.of(args[2]))
                .build();
        final CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                hivemq.stop().join();
                hivemq.close();
            } catch (final Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "plugforge-launcher-stop"));
        try {
            hivemq.start().join();
        } catch (final RuntimeException e) {
            // HiveMQ's own threads would keep a failed JVM alive: exit so the fixture sees it.
            e.printStackTrace();
            System.out.flush();
            Runtime.getRuntime().halt(1);
        }
        System.out.println("PLUGFORGE-HIVEMQ-STARTED");
        System.out.flush();
        stopped.await();
    }
}
