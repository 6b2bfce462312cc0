"""Recovery: breakers and plans (pure), the healer, and handlers' outbound breakers."""
