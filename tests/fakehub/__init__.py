"""A local emulator of the Hugging Face Hub API and of a Space's runtime, for tests."""
