"""Push webhooks (GitHub, Gitea/Forgejo, GitLab) that request builds (issue 4).

Pure core: ``signatures`` (verify a delivery), ``events`` (parse a push), ``matching`` (which
BrokerPlugins a push concerns), ``dedupe`` (redeliveries and bursts). Thin I/O: ``plugins``
(BrokerPlugins and their webhook Secrets from the apiserver), ``enqueue`` (PluginBuild
requests), ``server`` (the HTTP endpoint). Data flows one way: server -> handler -> core.
"""
