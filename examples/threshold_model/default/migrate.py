"""The threshold model's migrator: its state is the ``state/`` directory.

Export names it (so ``shoal export`` publishes the learned threshold as a small
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
            raise MigrationError(f"cannot carry the threshold over from "
                                 f"{ctx.from_version}: {error}")


main(ThresholdMigrator())
