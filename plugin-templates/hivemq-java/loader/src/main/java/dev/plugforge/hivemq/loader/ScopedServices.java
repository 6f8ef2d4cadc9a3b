package dev.plugforge.hivemq.loader;

import com.hivemq.extension.sdk.api.events.EventRegistry;
import com.hivemq.extension.sdk.api.services.auth.SecurityRegistry;
import com.hivemq.extension.sdk.api.services.auth.provider.AuthenticatorProvider;
import com.hivemq.extension.sdk.api.services.auth.provider.AuthorizerProvider;
import com.hivemq.extension.sdk.api.services.auth.provider.EnhancedAuthenticatorProvider;
import com.hivemq.extension.sdk.api.services.interceptor.GlobalInterceptorRegistry;
import com.hivemq.extension.sdk.api.services.intializer.InitializerRegistry;

import java.lang.reflect.Proxy;
import java.util.Collections;
import java.util.HashMap;
import java.util.Map;

/**
 * The services a hot-loaded plugin sees through {@code Services}: the broker's own, except that
 * the security registry only records the plugin's providers (the loader delegates to them while
 * the plugin is active), and registries whose registrations could not be undone when the plugin
 * is replaced refuse with an explanation.
 */
final class ScopedServices implements SecurityRegistry {

    private static final Class<?>[] NOT_UNDOABLE = {
            InitializerRegistry.class, GlobalInterceptorRegistry.class, EventRegistry.class};

    private volatile AuthenticatorProvider authenticatorProvider;
    private volatile AuthorizerProvider authorizerProvider;

    Map<String, Object> servicesMap(final Map<String, Object> host) {
        final Map<String, Object> map = new HashMap<>(host);
        map.put(SecurityRegistry.class.getCanonicalName(), this);
        for (final Class<?> type : NOT_UNDOABLE) {
            map.put(type.getCanonicalName(), refusing(type));
        }
        return Collections.unmodifiableMap(map);
    }

    AuthenticatorProvider authenticatorProvider() {
        return authenticatorProvider;
    }

    AuthorizerProvider authorizerProvider() {
        return authorizerProvider;
    }

    @Override
    public void setAuthenticatorProvider(final AuthenticatorProvider provider) {
        authenticatorProvider = provider;
    }

    @Override
    public void setEnhancedAuthenticatorProvider(final EnhancedAuthenticatorProvider provider) {
        throw new UnsupportedOperationException("plugforge-loader: enhanced authenticators "
                + "(AUTH packets) are not supported for hot-loaded plugins; register a "
                + "SimpleAuthenticator, or install the plugin as a plain extension (broker restart)");
    }

    @Override
    public void setAuthorizerProvider(final AuthorizerProvider provider) {
        authorizerProvider = provider;
    }

    private static Object refusing(final Class<?> type) {
        return Proxy.newProxyInstance(ScopedServices.class.getClassLoader(), new Class<?>[]{type},
                (proxy, method, args) -> {
                    if (method.getDeclaringClass() == Object.class) {
                        return "toString".equals(method.getName()) ? "refusing " + type.getSimpleName()
                                : "hashCode".equals(method.getName()) ? System.identityHashCode(proxy)
                                : proxy == args[0];
                    }
                    throw new UnsupportedOperationException("plugforge-loader: " + type.getSimpleName()
                            + "." + method.getName() + " is not available to hot-loaded plugins: "
                            + "the broker cannot unregister it when the plugin is replaced. Use only "
                            + "Services.securityRegistry() (authenticator, authorizers), or install "
                            + "the plugin as a plain extension (broker restart)");
                });
    }
}
