"""The operator's API: its group, version and kinds (the schemas are crd.py's)."""

GROUP = "mlperf-operator.io"
VERSION = "v1alpha1"
KIND = "MLPerfRun"
PLURAL = "mlperfruns"
CAMPAIGN_KIND = "MLPerfCampaign"
CAMPAIGN_PLURAL = "mlperfcampaigns"

# Kueue (kueue.x-k8s.io, v0.19): a queued Job's Workload says why it waits.
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
WORKLOAD_PLURAL = "workloads"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # on a Workload: the uid of the Job it stands for
