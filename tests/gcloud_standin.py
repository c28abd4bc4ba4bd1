"""Stand-in for the `gcloud` commands the launchers run, speaking like the real CLI: on
stdout what the `--format` asks for, and for a failure its stderr text and exit status 1
(texts as the real CLI prints them; sources in docs/cloud.md#sources). Every call is appended to
$GCLOUD_CALLS, one JSON list per line.

$GCLOUD_FAIL names what is missing or refused (comma separated): family, bucket, gpu-type,
quota-read, image, repository. Quotas (none in use, 2 of the region's 24 CPUS): the region's
GPU limit $GCLOUD_GPU_QUOTA (default 8), its preemptible one $GCLOUD_PREEMPTIBLE_GPU_QUOTA
(default the same), the project's GPUS_ALL_REGIONS $GCLOUD_ALL_REGIONS_GPUS (default 8).
`builds submit SOURCE --config C` fails unless SOURCE holds launch/Dockerfile and C."""
import json
import os
import sys

args = sys.argv[1:]
with open(os.environ["GCLOUD_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\n")
fail = set(filter(None, os.environ.get("GCLOUD_FAIL", "").split(",")))
command = " ".join(a for a in args[:4] if not a.startswith("-"))


def value(flag, default=""):
    return args[args.index(flag) + 1] if flag in args else default


def error(cmd, text):
    sys.stderr.write(f"ERROR: (gcloud.{cmd}) {text}\n")
    sys.exit(1)


project = value("--project", "my-project")
if command.startswith("compute images describe-from-family"):
    family = args[3]
    if "family" in fail:
        error("compute.images.describe-from-family", "Could not fetch resource:\n - The resource "
              f"'projects/{value('--project')}/global/images/family/{family}' was not found\n")
    print(f"{family}-v20260410")
elif command.startswith("storage cp"):
    bucket = args[3].split("/")[2]
    if "bucket" in fail:
        error("storage.cp", f"gs://{bucket} not found: 404.")
elif command.startswith("storage rm"):
    pass
elif command.startswith("compute accelerator-types describe"):
    if "gpu-type" in fail:
        error("compute.accelerator-types.describe", "Could not fetch resource:\n - The resource "
              f"'projects/{project}/zones/{value('--zone')}/acceleratorTypes/{args[3]}' was not found\n")
    print(args[3])
elif command.startswith("compute regions describe"):
    if "quota-read" in fail:
        error("compute.regions.describe", "Could not fetch resource:\n - Required 'compute.regions.get' "
              f"permission for 'projects/{project}/regions/{args[3]}'\n")
    limit = float(os.environ.get("GCLOUD_GPU_QUOTA", "8"))
    spot = float(os.environ.get("GCLOUD_PREEMPTIBLE_GPU_QUOTA", limit))
    for metric, lim, used in [("CPUS", 24.0, 2.0), ("NVIDIA_T4_GPUS", limit, 0.0),
                              ("PREEMPTIBLE_NVIDIA_T4_GPUS", spot, 0.0), ("NVIDIA_L4_GPUS", limit, 0.0)]:
        print(f"{metric},{lim},{used}")
elif command.startswith("compute project-info describe"):
    print(f"CPUS_ALL_REGIONS,32.0,2.0\nGPUS_ALL_REGIONS,{float(os.environ.get('GCLOUD_ALL_REGIONS_GPUS', '8'))},0.0")
elif command.startswith("compute machine-types describe"):
    print(args[3].rsplit("-", 1)[1])  # n1-standard-32: 32 vCPUs
elif command.startswith("artifacts repositories describe"):
    if "repository" in fail:
        error("artifacts.repositories.describe", "NOT_FOUND: Requested entity was not found.")
    print(f"projects/{project}/locations/{value('--location')}/repositories/{args[3]}")
elif command.startswith("artifacts docker images describe"):
    if "image" in fail:
        error("artifacts.docker.images.describe", "Image not found.\n\nA valid container image can be referenced "
              "by tag or digest, has the format of\n  LOCATION-docker.pkg.dev/PROJECT-ID/REPOSITORY-ID/IMAGE:tag\n")
    print("sha256:0123")
elif command.startswith("builds submit"):
    source, config = args[2], value("--config")
    if not (os.path.isfile(os.path.join(source, "launch", "Dockerfile")) and os.path.isfile(config)):
        error("builds.submit", f"Local file [{source}] is none of .zip, .tgz, .gz")
    print(f"IMAGES: {value('--substitutions').split('=', 1)[1]}  STATUS: SUCCESS")
elif command.startswith(("compute instances create", "ai custom-jobs create")):
    if "--config" in args:  # the job spec, for the test to read
        with open(os.environ["GCLOUD_CALLS"], "a") as f:
            f.write(json.dumps(["spec", open(value("--config")).read()]) + "\n")
else:
    error(command.replace(" ", "."), f"stand-in gcloud does not know: {args}")
