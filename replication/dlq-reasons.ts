/** Why an entry that reached the DLQ after a merge's last listing was not merged by it (the CLI counts these apart: they did not fail). */
export const LEFT_FOR_NEXT_MERGE = "not merged: it reached the DLQ after this merge's last listing (its run's tasks kept coming); its run stays held: merge again";
