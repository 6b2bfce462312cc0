"""The chaos suite of issue 3: real workers, real faults, and a history checker that judges."""
