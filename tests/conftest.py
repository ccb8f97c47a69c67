pytest_plugins = ["chatcore.testing"]
