# A sub-agent's container: the harness base in the `agent` role. The core's
# meta flake puts it beside the agent's own agent.nix in
# nixosConfigurations.<name>; the agent sees its config read-only at
# /agents/<name>/config.
{
  imports = [ ./harness-base.nix ];
  hyperhive.role = "agent";
}
