// Placeholder until the SentencePiece shim lands.
