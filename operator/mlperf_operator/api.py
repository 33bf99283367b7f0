"""The operator's API: its group, version and kinds (the schemas are crd.py's)."""

GROUP = "mlperf-operator.io"
VERSION = "v1alpha1"
KIND = "MLPerfRun"
PLURAL = "mlperfruns"
CAMPAIGN_KIND = "MLPerfCampaign"
CAMPAIGN_PLURAL = "mlperfcampaigns"
