"""The two stages as LightningModules (Stage I reconstruction, Stage II contrastive) on a shared base, and the
optimizer and sharding helpers they use."""
