"""Where the prediction log lives: one interface, one module per engine."""
