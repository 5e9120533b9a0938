//! Reading manifest files, directories and stdin.
