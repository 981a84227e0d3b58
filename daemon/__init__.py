"""The driftd process: settings, CLI, the faust app and its lifecycle, the HTTP surface."""
