#!/usr/bin/env bash
# A stand-in for sbatch/qsub: appends what the job asks for to $SUBMIT_LOG (default
# .snakemake/cluster-local/submitted.tsv), runs the job script here, prints a job id.
# With SUBMIT_REFUSE=1 it records the job and refuses it (exit 1) without running it:
# snakemake then stops at its first submission (tests/test_data_step.py sees which job
# comes first).
# usage: submit.sh RULE THREADS GPU MEM_MB RUNTIME JOBSCRIPT
set -euo pipefail
log=${SUBMIT_LOG:-.snakemake/cluster-local/submitted.tsv}
mkdir -p "$(dirname "$log")"
printf 'rule=%s\tthreads=%s\tgpu=%s\tmem_mb=%s\truntime=%s\n' "$1" "$2" "$3" "$4" "$5" >>"$log"
if [ "${SUBMIT_REFUSE:-0}" = 1 ]; then
  echo "submit.sh: SUBMIT_REFUSE=1, job not run" >&2
  exit 1
fi
# the job script reports success or failure to Snakemake itself (marker files)
bash "${@: -1}" >>"${log%.tsv}.jobs.log" 2>&1 || true
echo "local-$$"
