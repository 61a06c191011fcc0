def run_files(kind, filename):
    """The per-run output ``filename`` of every configured run."""
    return [f"{RESULTS}/{kind}/{t}/{m}/{s}/seed{seed}/{filename}" for t, m, s, seed in RUNS]


def model_dir(wildcards):
    """Where a run's weights live: the dense reference row is the teacher itself."""
    if wildcards.method == "dense":
        return f"{RESULTS}/teachers/{wildcards.task}/seed{wildcards.seed}"
    return f"{RESULTS}/models/{wildcards.task}/{wildcards.method}/{wildcards.setting}/seed{wildcards.seed}"


def run_info(wildcards):
    return {
        "task": wildcards.task,
        "method": wildcards.method,
        "setting": wildcards.setting,
        "seed": int(wildcards.seed),
    }
