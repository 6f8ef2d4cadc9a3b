/*
 * plugforge_starter: a Mosquitto 2.0 auth plugin (plugin API v5).
 *
 * Policy:
 *   - CONNECT is refused for usernames listed in the option deny_users
 *     (comma separated; default "mallory"); every other username is accepted.
 *     Clients without a username are left to mosquitto (allow_anonymous).
 *   - PUBLISH to a topic under "forbidden/" is refused; everything else is allowed.
 *
 * Broker configuration:
 *   plugin /plugin/plugforge_starter/plugforge_starter.so
 *   plugin_opt_deny_users mallory,eve
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "plugin_info.h"

#define DEFAULT_DENY_USERS "mallory"
#define FORBIDDEN_PREFIX "forbidden/"

struct policy {
	mosquitto_plugin_id_t *id;
	char **deny_users; /* NULL-terminated */
};

static void free_list(char **list)
{
	if (list == NULL) {
		return;
	}
	for (char **p = list; *p != NULL; p++) {
		free(*p);
	}
	free(list);
}

/* Split a comma separated list into trimmed, non-empty entries. NULL on out-of-memory. */
static char **split_users(const char *text)
{
	size_t max = 1;
	for (const char *c = text; *c; c++) {
		if (*c == ',') {
			max++;
		}
	}
	char **list = calloc(max + 1, sizeof(char *));
	if (list == NULL) {
		return NULL;
	}
	size_t n = 0;
	const char *start = text;
	while (true) {
		const char *end = strchr(start, ',');
		if (end == NULL) {
			end = start + strlen(start);
		}
		const char *a = start;
		const char *b = end;
		while (a < b && (*a == ' ' || *a == '\t')) {
			a++;
		}
		while (b > a && (b[-1] == ' ' || b[-1] == '\t')) {
			b--;
		}
		if (b > a) {
			list[n] = strndup(a, (size_t)(b - a));
			if (list[n] == NULL) {
				free_list(list);
				return NULL;
			}
			n++;
		}
		if (*end == '\0') {
			break;
		}
		start = end + 1;
	}
	return list;
}

static bool is_denied(const struct policy *policy, const char *username)
{
	for (char **p = policy->deny_users; *p != NULL; p++) {
		if (strcmp(*p, username) == 0) {
			return true;
		}
	}
	return false;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	(void)event;
	const struct mosquitto_evt_basic_auth *ed = event_data;
	const struct policy *policy = userdata;

	if (ed->username == NULL) {
		/* Anonymous: let allow_anonymous (or other plugins) decide. */
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	if (is_denied(policy, ed->username)) {
		mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN_NAME ": refusing CONNECT of user %s",
				     ed->username);
		return MOSQ_ERR_AUTH;
	}
	/* Accept rather than defer: with no password file, a deferred check would be refused. */
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	const struct mosquitto_evt_acl_check *ed = event_data;

	if (ed->access == MOSQ_ACL_WRITE && ed->topic != NULL &&
	    strncmp(ed->topic, FORBIDDEN_PREFIX, strlen(FORBIDDEN_PREFIX)) == 0) {
		mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN_NAME ": refusing PUBLISH to %s by %s",
				     ed->topic, mosquitto_client_id(ed->client));
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	const char *deny = DEFAULT_DENY_USERS;
	for (int i = 0; i < option_count; i++) {
		if (strcmp(options[i].key, "deny_users") == 0) {
			deny = options[i].value;
		}
	}

	struct policy *policy = calloc(1, sizeof(*policy));
	if (policy == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	policy->id = identifier;
	policy->deny_users = split_users(deny);
	if (policy->deny_users == NULL) {
		free(policy);
		return MOSQ_ERR_NOMEM;
	}

	int rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL,
					     policy);
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL,
						 policy);
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		mosquitto_callback_unregister(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		free_list(policy->deny_users);
		free(policy);
		return rc;
	}
	*userdata = policy;
	mosquitto_log_printf(MOSQ_LOG_INFO, PLUGIN_NAME " " PLUGIN_VERSION " loaded (deny_users=%s)",
			     deny);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)options;
	(void)option_count;
	struct policy *policy = userdata;
	if (policy == NULL) {
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_callback_unregister(policy->id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(policy->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	free_list(policy->deny_users);
	free(policy);
	return MOSQ_ERR_SUCCESS;
}
