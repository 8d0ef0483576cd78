/** This build's version: the serverVersion the operator service gives for this cluster. */
export const VERSION = "0.1.0";
