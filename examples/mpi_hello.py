"""MPI hello-world: every rank says where it runs (mpirun -np N python3 mpi_hello.py)."""

from mpi4py import MPI

comm = MPI.COMM_WORLD
names = comm.gather(MPI.Get_processor_name(), root=0)
print(f"hello from rank {comm.rank} of {comm.size} on {MPI.Get_processor_name()}", flush=True)
if comm.rank == 0:
    print(f"{comm.size} ranks on {len(set(names))} nodes: {', '.join(sorted(set(names)))}",
          flush=True)
