"""Training methods: one LightningModule subclass per method, each writing only its step."""
