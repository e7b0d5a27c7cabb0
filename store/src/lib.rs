//! temper's embedded store. A sled index (node records with key trees, runs, pins, file-hash
//! cache) beside content-addressed artifact directories named by node key, each with a
//! manifest written last. Publishing is atomic; locks recover from dead processes; the index
//! can be rebuilt from the manifests. Knows nothing of torch or recipes.
