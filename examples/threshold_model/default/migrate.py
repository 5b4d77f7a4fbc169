"""The threshold model's migrator: its state is the ``state/`` directory.

It serves the seed's gRPC ``Migrator`` service through ``agent.migrator_sdk``
on the address the agent gives it (``SHOAL_MIGRATOR_ADDRESS``). Export names
``state`` (so ``shoal export`` publishes the learned threshold as a small
derived version); ingest copies it out of the version the node is leaving, if
that version had learned anything.
"""

from agent.migrator_sdk import IngestContext, MigrationError, Migrator, main


class ThresholdMigrator(Migrator):
    def export(self) -> list[str]:
        return ["state"]

    def ingest(self, ctx: IngestContext) -> None:
        error = ctx.try_copy("state/threshold.json")
        if error is not None and "No such file" not in error:
            raise MigrationError(f"cannot carry the threshold over: {error}")


if __name__ == "__main__":
    main(ThresholdMigrator())
