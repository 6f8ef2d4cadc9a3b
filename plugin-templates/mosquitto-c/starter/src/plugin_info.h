/* The plugin's identity. plugforge reads both values from this file (see the template's
 * recipe.yaml): the name names the artifact (/plugin/<name>/<name>.so), the version tags it. */
#ifndef PLUGIN_INFO_H
#define PLUGIN_INFO_H

#define PLUGIN_NAME "plugforge_starter"
#define PLUGIN_VERSION "0.1.0"

#endif
