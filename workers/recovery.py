"""Recovery tasks (SPEC section 7); filled in by the fault-tolerance issue."""
