# The manager's container: the harness base in the `manager` role, with every
# agent's proposed config repo writable under /config (HIVE_CONFIG_DIR) and an
# identity for the commits it makes there.
{
  imports = [ ./harness-base.nix ];
  hyperhive.role = "manager";
  systemd.services.hyperhive-harness.environment = {
    GIT_AUTHOR_NAME = "hyperhive manager";
    GIT_AUTHOR_EMAIL = "manager@hyperhive.invalid";
    GIT_COMMITTER_NAME = "hyperhive manager";
    GIT_COMMITTER_EMAIL = "manager@hyperhive.invalid";
  };
}
