"""Long-running helpers of the local fleet, each started as a process by a component."""
