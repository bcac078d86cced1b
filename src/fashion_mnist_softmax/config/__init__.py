"""The config: its schema, and the checks of what a type cannot say."""
