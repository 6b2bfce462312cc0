"""The chaos suite: real workers, real faults, and a history checker that judges."""
