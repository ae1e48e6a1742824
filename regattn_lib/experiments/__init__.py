"""The paper's experiments: profiles, the pipeline steps the notebooks run, one function per
table (``studies``), tables and reports, figures, timings and the pre-flight checks."""
