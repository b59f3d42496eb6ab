package org.apache.spark.shuffle.sluice;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Locale;

/**
 * Loads {@code libsluice_jni.so} from inside the jar ({@code /native/<os>-<arch>/}), so no
 * {@code LD_LIBRARY_PATH} or manual copy is needed. The library is extracted once per JVM into a
 * temporary file ({@code java.io.tmpdir}, which must allow executing mapped files).
 *
 * <p>On Linux the file is deleted as soon as it is loaded (the mapping stays valid), so executors
 * that are killed rather than shut down do not leave a copy behind for every run; elsewhere it is
 * deleted at exit.
 */
final class NativeLoader {
  private static boolean loaded = false;

  private NativeLoader() {}

  static synchronized void load() {
    if (loaded) {
      return;
    }
    String osName = System.getProperty("os.name").toLowerCase(Locale.ROOT);
    String os = osName.contains("linux") ? "linux" : "other";
    String arch = System.getProperty("os.arch");
    if (arch.equals("amd64")) {
      arch = "x86_64";
    }
    String resource = "/native/" + os + "-" + arch + "/libsluice_jni.so";
    try (InputStream in = NativeLoader.class.getResourceAsStream(resource)) {
      if (in == null) {
        throw new UnsatisfiedLinkError(
            "the Sluice jar has no native library for " + os + "-" + arch + " (" + resource + ")");
      }
      Path file = Files.createTempFile("libsluice_jni", ".so");
      file.toFile().deleteOnExit();
      try {
        Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
        System.load(file.toAbsolutePath().toString());
        loaded = true;
      } finally {
        if (os.equals("linux")) {
          Files.deleteIfExists(file);
        }
      }
    } catch (IOException e) {
      throw new UnsatisfiedLinkError("cannot extract " + resource + ": " + e);
    }
  }
}
