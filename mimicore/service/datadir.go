package service

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"go.uber.org/zap"
)

// dirMode is the mode of the data directory and of its KeysDir: they hold
// private keys and the provider's state, which no other local user may
// read.
const dirMode fs.FileMode = 0o700

// prepareDataDir creates dir (0700) when missing and sets an existing dir,
// and its KeysDir if present, to 0700, logging each change at info level.
// dir may be a symbolic link to a directory; its target is changed.
func prepareDataDir(dir string, logger *zap.Logger) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}
	if err := tighten(dir, logger); err != nil {
		return err
	}
	err := tighten(filepath.Join(dir, KeysDir), logger)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// tighten sets the directory at path to dirMode if its mode differs.
// Windows has no such permission bits; there it only checks that path is
// a directory.
func tighten(path string, logger *zap.Logger) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory (mode %s)", path, fi.Mode())
	}
	if runtime.GOOS == "windows" || fi.Mode().Perm() == dirMode {
		return nil
	}
	if err := os.Chmod(path, dirMode); err != nil {
		return fmt.Errorf("setting %s to mode %04o: %w", path, dirMode, err)
	}
	logger.Info("set directory permissions to owner only", zap.String("path", path),
		zap.String("old_mode", fmt.Sprintf("%04o", fi.Mode().Perm())),
		zap.String("new_mode", fmt.Sprintf("%04o", dirMode)))
	return nil
}
