"""Component `toolchain`: the pinned control-plane binaries, found or built."""

from __future__ import annotations

from factoryctl.component import ComponentStatus, FleetContext


class ToolchainComponent:
    """Makes sure every pinned binary is present; nothing to stop."""

    name = "toolchain"

    def up(self, ctx: FleetContext) -> None:
        ctx.tools  # noqa: B018 - builds the missing binaries, with progress

    def down(self, ctx: FleetContext) -> None:
        """The cache outlives the fleet."""

    def status(self, ctx: FleetContext) -> ComponentStatus:
        tools = ctx.tools_if_present()
        if tools is None:
            return ComponentStatus(self.name, "stopped", "not built: run `factoryctl dev tools`")
        return ComponentStatus(
            self.name, "running", "all pinned binaries present", data=dict(tools.as_dict())
        )
