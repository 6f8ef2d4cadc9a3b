package dev.plugforge.hivemq.loader;

import com.hivemq.extension.sdk.api.client.parameter.ServerInformation;
import com.hivemq.extension.sdk.api.parameter.ExtensionInformation;
import com.hivemq.extension.sdk.api.services.Services;
import com.hivemq.extension.sdk.api.services.builder.Builders;

import java.lang.reflect.Field;
import java.util.Map;

/**
 * What HiveMQ gave the loader and the loaded plugins get a share of: the static service and
 * builder maps HiveMQ injected into the loader's own {@code Services}/{@code Builders}, and the
 * start input's server information.
 */
final class HostContext {

    final ServerInformation serverInformation;
    final Map<String, ExtensionInformation> enabledExtensions;
    final Map<String, Object> services;
    final Map<String, Object> builders;

    private HostContext(final ServerInformation serverInformation,
                        final Map<String, ExtensionInformation> enabledExtensions,
                        final Map<String, Object> services, final Map<String, Object> builders) {
        this.serverInformation = serverInformation;
        this.enabledExtensions = enabledExtensions;
        this.services = services;
        this.builders = builders;
    }

    static HostContext capture(final ServerInformation serverInformation,
                               final Map<String, ExtensionInformation> enabledExtensions)
            throws ReflectiveOperationException {
        return new HostContext(serverInformation, enabledExtensions,
                staticMap(Services.class, "services"), staticMap(Builders.class, "builders"));
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> staticMap(final Class<?> type, final String field)
            throws ReflectiveOperationException {
        final Field f = type.getDeclaredField(field);
        f.setAccessible(true);
        final Object value = f.get(null);
        if (!(value instanceof Map)) {
            throw new IllegalStateException(type.getName() + "." + field + " is not initialized; "
                    + "is this HiveMQ's extension SDK 4.x?");
        }
        return (Map<String, Object>) value;
    }
}
