package plugforge_starter;

import com.hivemq.extension.sdk.api.auth.PublishAuthorizer;
import com.hivemq.extension.sdk.api.auth.SubscriptionAuthorizer;
import com.hivemq.extension.sdk.api.auth.parameter.PublishAuthorizerInput;
import com.hivemq.extension.sdk.api.auth.parameter.PublishAuthorizerOutput;
import com.hivemq.extension.sdk.api.auth.parameter.SubscriptionAuthorizerInput;
import com.hivemq.extension.sdk.api.auth.parameter.SubscriptionAuthorizerOutput;
import com.hivemq.extension.sdk.api.packets.publish.AckReasonCode;

/** Refuses PUBLISH to topics under {@code forbidden/}; allows every other publish and subscription. */
public final class TopicAuthorizer implements PublishAuthorizer, SubscriptionAuthorizer {

    static final String FORBIDDEN_PREFIX = "forbidden/";

    static boolean mayPublish(final String topic) {
        return !topic.startsWith(FORBIDDEN_PREFIX);
    }

    @Override
    public void authorizePublish(final PublishAuthorizerInput input, final PublishAuthorizerOutput output) {
        if (mayPublish(input.getPublishPacket().getTopic())) {
            output.authorizeSuccessfully();
        } else {
            // The message is dropped. MQTT 5 clients get NOT_AUTHORIZED in their PUBACK/PUBREC;
            // HiveMQ CE then closes the connection (any QoS, any protocol version).
            output.failAuthorization(AckReasonCode.NOT_AUTHORIZED, "topic is forbidden");
        }
    }

    @Override
    public void authorizeSubscribe(final SubscriptionAuthorizerInput input,
                                   final SubscriptionAuthorizerOutput output) {
        // Add subscription rules here; the sample policy allows every subscription.
        output.authorizeSuccessfully();
    }
}
