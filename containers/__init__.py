"""HPC-ready container images: a step's ``image.yaml`` to an Apptainer SIF, cached by content.

- :mod:`containers.spec`: the ``image.yaml`` model, validated with strict patterns;
- :mod:`containers.render`: spec (or Dockerfile) to a Singularity/Apptainer definition (spython);
- :mod:`containers.builder`: real ``apptainer build --fakeroot`` in the stack's builder tree;
- :mod:`containers.store`: the content-addressed image store (id = hash of the inputs);
- :mod:`containers.service`: build records, joining identical builds, resuming after a restart,
  and :func:`containers.service.ensure_image` for callers without a database (the deployer).

Usable without the gateway; the gateway's ``/images`` endpoints call :mod:`containers.service`.
"""
