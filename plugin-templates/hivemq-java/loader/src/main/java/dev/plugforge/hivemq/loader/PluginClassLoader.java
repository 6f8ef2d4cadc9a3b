package dev.plugforge.hivemq.loader;

import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.Field;
import java.net.URL;
import java.net.URLClassLoader;
import java.util.List;
import java.util.Map;

/**
 * One plugin version's classes. Like HiveMQ's own extension class loader: the SDK, SLF4J and
 * the JDK come from the parent (so the broker's interfaces are the plugin's), everything else
 * from the plugin's jars first; and {@code Services} and {@code Builders} are defined again in
 * this loader, so their static maps belong to this plugin version alone.
 */
final class PluginClassLoader extends URLClassLoader {

    static final String SERVICES = "com.hivemq.extension.sdk.api.services.Services";
    static final String BUILDERS = "com.hivemq.extension.sdk.api.services.builder.Builders";
    private static final List<String> PARENT_FIRST = List.of(
            "java.", "javax.annotation", "jdk.", "com.hivemq.extension.sdk.api.", "org.slf4j.",
            "com.codahale.metrics.");

    static {
        ClassLoader.registerAsParallelCapable();
    }

    PluginClassLoader(final URL[] jars, final ClassLoader parent) {
        super(jars, parent);
    }

    @Override
    protected Class<?> loadClass(final String name, final boolean resolve) throws ClassNotFoundException {
        synchronized (getClassLoadingLock(name)) {
            Class<?> type = findLoadedClass(name);
            if (type == null && (SERVICES.equals(name) || BUILDERS.equals(name))) {
                type = defineCopy(name);
            }
            if (type == null && !parentFirst(name)) {
                try {
                    type = findClass(name);
                } catch (final ClassNotFoundException e) {
                    // Not in the plugin's jars: the parent may have it.
                }
            }
            if (type == null) {
                return super.loadClass(name, resolve);
            }
            if (resolve) {
                resolveClass(type);
            }
            return type;
        }
    }

    /** Sets this version's {@code Services.services} and {@code Builders.builders}. */
    void injectStatics(final Map<String, Object> services, final Map<String, Object> builders)
            throws ReflectiveOperationException {
        setStatic(loadClass(SERVICES), "services", services);
        setStatic(loadClass(BUILDERS), "builders", builders);
    }

    private static void setStatic(final Class<?> type, final String field, final Object value)
            throws ReflectiveOperationException {
        final Field f = type.getDeclaredField(field);
        f.setAccessible(true);
        f.set(null, value);
    }

    private static boolean parentFirst(final String name) {
        for (final String prefix : PARENT_FIRST) {
            if (name.startsWith(prefix)) {
                return true;
            }
        }
        return false;
    }

    private Class<?> defineCopy(final String name) throws ClassNotFoundException {
        final String resource = name.replace('.', '/') + ".class";
        try (InputStream in = getParent().getResourceAsStream(resource)) {
            if (in == null) {
                throw new ClassNotFoundException(name + " is not on the broker's class path");
            }
            final byte[] bytes = in.readAllBytes();
            return defineClass(name, bytes, 0, bytes.length);
        } catch (final IOException e) {
            throw new ClassNotFoundException(name, e);
        }
    }
}
