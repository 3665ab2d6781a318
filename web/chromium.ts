/**
 * Launches the system's Chromium (Debian's `chromium` package) through playwright-core for the
 * browser tests and the browser benchmark. No browser is downloaded: playwright-core only drives
 * the executable at CHROMIUM_PATH (default /usr/bin/chromium).
 *
 * WebGL and WebGPU run on SwiftShader, Chromium's CPU renderer, so the numbers measured here are
 * software-rendering numbers, not what a real GPU gives.
 */
import * as fs from 'node:fs';
import type { Browser } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS: readonly string[] = [
  '--no-sandbox',
  '--use-angle=swiftshader', // WebGL2 through ANGLE on SwiftShader (no GPU on CI machines)
  '--enable-unsafe-swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--enable-unsafe-webgpu', // WebGPU on Linux is behind this flag; the adapter is SwiftShader's Vulkan
];

/** Why Chromium cannot be used here, or null when it can. */
export function chromiumMissing(): string | null {
  try {
    fs.accessSync(CHROMIUM_PATH, fs.constants.X_OK);
    return null;
  } catch {
    return `Chromium not found at ${CHROMIUM_PATH}: install it with \`apt-get install -y chromium\` (Debian) or set CHROMIUM_PATH`;
  }
}

export async function launchChromium(): Promise<Browser> {
  const missing = chromiumMissing();
  if (missing) throw new Error(missing);
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: [...CHROMIUM_ARGS] });
}
