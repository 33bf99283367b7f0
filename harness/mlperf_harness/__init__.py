"""MLPerf Inference harness: LoadGen SUT/QSL, backends, benchmarks, audits and reports."""
