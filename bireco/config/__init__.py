"""Configuration: the typed schema (schema), start-up validation (validate), composition from Python (compose) and
the command-line start-up shared by the entry points (cli). The YAML files are in the repository's conf/."""
